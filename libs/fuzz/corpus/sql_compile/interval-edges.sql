SELECT page, window_start, window_end, COUNT(*) AS n
FROM TUMBLE(clicks, event_time, INTERVAL '9223372036854775807' SECOND)
GROUP BY page, window_start, window_end
