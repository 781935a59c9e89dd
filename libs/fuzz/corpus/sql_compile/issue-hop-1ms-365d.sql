SELECT page, window_start, window_end, COUNT(*) AS n
FROM HOP(clicks, event_time, INTERVAL '1' MILLISECOND, INTERVAL '365' DAY)
GROUP BY page, window_start, window_end
