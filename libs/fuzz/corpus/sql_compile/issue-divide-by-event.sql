SELECT page, window_start, window_end, SUM(100 / (duration_ms - 1)) AS poison
FROM TUMBLE(clicks, event_time, INTERVAL '1' MINUTE)
GROUP BY page, window_start, window_end
