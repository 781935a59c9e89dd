SELECT k, window_start, window_end, COUNT(*) AS n
FROM SESSION(s, ts, INTERVAL '10' SECOND)
GROUP BY k, window_start, window_end
