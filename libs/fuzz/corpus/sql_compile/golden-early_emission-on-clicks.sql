SELECT user_id, window_start, window_end, COUNT(*) AS n
FROM TUMBLE(clicks, event_time, INTERVAL '1' MINUTE)
GROUP BY user_id, window_start, window_end
