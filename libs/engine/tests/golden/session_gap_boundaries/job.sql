SELECT k, window_start, window_end, COUNT(*) AS n, SUM(v) AS total
FROM SESSION(s, ts, INTERVAL '10' SECOND)
GROUP BY k, window_start, window_end
