SELECT page, window_start, window_end, SUM(CAST(duration_ms AS TINYINT) * 9223372036854775807) AS s, MAX(CAST('x' AS INT)) AS m
FROM TUMBLE(clicks, event_time, INTERVAL '1' MINUTE)
GROUP BY page, window_start, window_end
