SELECT k, window_start, window_end, COUNT(*) AS n
FROM TUMBLE(s, event_time, INTERVAL '10' SECOND)
GROUP BY k, window_start, window_end
