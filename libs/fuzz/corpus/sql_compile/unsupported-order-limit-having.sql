SELECT page, window_start, window_end, COUNT(*) AS n
FROM TUMBLE(clicks, event_time, INTERVAL '1' MINUTE)
GROUP BY page, window_start, window_end
HAVING COUNT(*) > 1 ORDER BY n DESC LIMIT 10
