SELECT o.order_id, window_start, window_end, COUNT(*) AS payments, SUM(p.amount) AS paid
FROM TUMBLE(orders, et, INTERVAL '1' MINUTE) AS o
JOIN payments AS p ON o.order_id = p.order_id AND p.et BETWEEN o.et AND o.et + INTERVAL '10' SECOND
GROUP BY o.order_id, window_start, window_end
