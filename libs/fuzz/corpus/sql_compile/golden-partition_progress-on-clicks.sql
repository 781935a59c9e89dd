SELECT user_id, window_start, window_end, COUNT(*) AS n
FROM TUMBLE(clicks, event_time, INTERVAL '10' SECOND)
GROUP BY user_id, window_start, window_end
