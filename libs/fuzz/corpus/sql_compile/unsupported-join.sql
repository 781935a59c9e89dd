SELECT a.page, window_start, window_end, COUNT(*) FROM TUMBLE(clicks, event_time, INTERVAL '1' MINUTE) a JOIN other b ON a.page = b.page GROUP BY a.page, window_start, window_end
