-- rows we must have
SELECT count(*) = 500 FROM t;
\c shop
SELECT 1
  FROM orders WHERE id = 42;
SELECT true
