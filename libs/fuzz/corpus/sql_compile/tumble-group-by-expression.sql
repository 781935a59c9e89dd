SELECT substr(page, 1, 4) AS prefix, country, window_start, window_end,
       AVG(duration_ms) AS avg_ms, COUNT(referrer) AS referred, SUM(_offset) AS offsets
FROM TUMBLE(clicks, event_time, INTERVAL '1' HOUR)
WHERE duration_ms BETWEEN 0 AND 3600000 AND _ingest_time > event_time
GROUP BY substr(page, 1, 4), country, window_start, window_end
