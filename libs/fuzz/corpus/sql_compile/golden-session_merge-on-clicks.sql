SELECT user_id, window_start, window_end, COUNT(*) AS n, SUM(duration_ms) AS total
FROM SESSION(clicks, event_time, INTERVAL '10' SECOND)
GROUP BY user_id, window_start, window_end
