SELECT page, window_start, window_end, COUNT(*) AS n
FROM HOP(clicks, event_time, INTERVAL '-1' SECOND, INTERVAL '0' SECOND)
GROUP BY page, window_start, window_end
