SELECT u.plan, window_start, window_end, COUNT(*) AS n
FROM TUMBLE(clicks, event_time, INTERVAL '10' SECOND) AS c
JOIN users FOR SYSTEM_TIME AS OF c.event_time AS u ON c.user_id = u.user_id
GROUP BY u.plan, window_start, window_end
