-- =============================================================================
-- microservices / 009_partitions.sql
-- Target DB : "microservices"
-- Derives from: seed 000_f63daeb8f570bd54 section 6.2 (price_history
--               partition for February 2025).
-- =============================================================================

-- FIX: bounds written in UTC ('... 00:00+00'); the seed's bare dates would be
-- interpreted in the session's TimeZone.
--
-- FIX: price_history has a DEFAULT partition (002).  If it already holds rows
-- in the new range (possible on a database that was in use between 002 and
-- this file), PostgreSQL rejects a plain CREATE ... PARTITION OF with:
-- ERROR: updated partition constraint for default partition
-- "price_history_default" would be violated by some row.
-- In that case the default partition is detached, the month is created, its
-- rows are moved into it, and the default partition is re-attached.  On a
-- fresh database only the plain CREATE runs.
DO $$
BEGIN
    IF EXISTS (SELECT 1
                 FROM onchain_analysis.price_history_default
                WHERE "timestamp" >= TIMESTAMPTZ '2025-02-01 00:00+00'
                  AND "timestamp" <  TIMESTAMPTZ '2025-03-01 00:00+00') THEN
        ALTER TABLE onchain_analysis.price_history
            DETACH PARTITION onchain_analysis.price_history_default;

        CREATE TABLE onchain_analysis.price_history_y2025m02 PARTITION OF onchain_analysis.price_history
        FOR VALUES FROM ('2025-02-01 00:00+00') TO ('2025-03-01 00:00+00');

        WITH moved AS (
            DELETE FROM onchain_analysis.price_history_default
             WHERE "timestamp" >= TIMESTAMPTZ '2025-02-01 00:00+00'
               AND "timestamp" <  TIMESTAMPTZ '2025-03-01 00:00+00'
            RETURNING *
        )
        INSERT INTO onchain_analysis.price_history SELECT * FROM moved;

        ALTER TABLE onchain_analysis.price_history
            ATTACH PARTITION onchain_analysis.price_history_default DEFAULT;
    ELSE
        CREATE TABLE onchain_analysis.price_history_y2025m02 PARTITION OF onchain_analysis.price_history
        FOR VALUES FROM ('2025-02-01 00:00+00') TO ('2025-03-01 00:00+00');
    END IF;
END
$$;
