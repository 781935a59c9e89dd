SELECT page, window_start, window_end,
       COUNT(*) AS views,
       SUM(100 / (duration_ms - 1)) AS score
FROM TUMBLE(clicks, event_time, INTERVAL '1' MINUTE)
WHERE CAST(tag AS INT) >= 0
GROUP BY page, window_start, window_end
