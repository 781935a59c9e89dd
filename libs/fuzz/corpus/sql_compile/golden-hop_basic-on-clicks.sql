SELECT user_id, window_start, window_end, COUNT(*) AS n, SUM(duration_ms) AS total
FROM HOP(clicks, event_time, INTERVAL '10' SECOND, INTERVAL '30' SECOND)
GROUP BY user_id, window_start, window_end
