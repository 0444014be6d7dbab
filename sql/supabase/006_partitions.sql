-- =============================================================================
-- supabase / 006_partitions.sql
-- Target DB : "supabase" (public schema)
-- Derives from: seed 000_f63daeb8f570bd54 section 6.2 (usage_events
--               partition for February 2025).
-- =============================================================================

-- FIX: bounds written in UTC ('... 00:00+00'); the seed's bare dates would be
-- interpreted in the session's TimeZone.
--
-- FIX: usage_events has a DEFAULT partition (003).  If the default partition
-- already holds rows in the new range (possible on a database that was in use
-- between 003 and this file), PostgreSQL rejects a plain CREATE ... PARTITION OF
-- with: ERROR: updated partition constraint for default partition
-- "usage_events_default" would be violated by some row.
-- In that case the default partition is detached, the month is created, its
-- rows are moved into it, and the default partition is re-attached.  On a
-- fresh database only the plain CREATE runs.
DO $$
BEGIN
    IF EXISTS (SELECT 1
                 FROM public.usage_events_default
                WHERE created_at >= TIMESTAMPTZ '2025-02-01 00:00+00'
                  AND created_at <  TIMESTAMPTZ '2025-03-01 00:00+00') THEN
        ALTER TABLE public.usage_events DETACH PARTITION public.usage_events_default;

        CREATE TABLE public.usage_events_y2025m02 PARTITION OF public.usage_events
        FOR VALUES FROM ('2025-02-01 00:00+00') TO ('2025-03-01 00:00+00');

        WITH moved AS (
            DELETE FROM public.usage_events_default
             WHERE created_at >= TIMESTAMPTZ '2025-02-01 00:00+00'
               AND created_at <  TIMESTAMPTZ '2025-03-01 00:00+00'
            RETURNING *
        )
        INSERT INTO public.usage_events SELECT * FROM moved;

        ALTER TABLE public.usage_events ATTACH PARTITION public.usage_events_default DEFAULT;
    ELSE
        CREATE TABLE public.usage_events_y2025m02 PARTITION OF public.usage_events
        FOR VALUES FROM ('2025-02-01 00:00+00') TO ('2025-03-01 00:00+00');
    END IF;
END
$$;
