-- =============================================================================
-- supabase / 004_functions.sql
-- Target DB : "supabase" (public schema)
-- Derives from: seed 000_f63daeb8f570bd54 sections 5.1 (update_updated_at_column
--               + triggers, check_rate_limit) and 5.2 (get_usage_analytics).
-- =============================================================================

-- 5.1 Update timestamp trigger ------------------------------------------------
-- Schema-qualified so it lands in public regardless of search_path.
CREATE OR REPLACE FUNCTION public.update_updated_at_column()
RETURNS TRIGGER AS $$
BEGIN
    NEW.updated_at = NOW();
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;

-- FIX: the seed says "apply to all tables with updated_at" but only creates
-- the trigger for user_profiles; public.subscriptions also has updated_at and
-- would never have it refreshed.  One trigger per table that has the column.
CREATE TRIGGER update_user_profiles_updated_at
    BEFORE UPDATE ON public.user_profiles
    FOR EACH ROW EXECUTE FUNCTION public.update_updated_at_column();

CREATE TRIGGER update_subscriptions_updated_at
    BEFORE UPDATE ON public.subscriptions
    FOR EACH ROW EXECUTE FUNCTION public.update_updated_at_column();

-- 5.1 Rate limit check function -------------------------------------------------
-- Returns TRUE and counts the request if the caller is still under p_limit in
-- the current window; returns FALSE (and counts nothing) once p_limit requests
-- were already counted in this window.
--
-- FIXES against the seed body:
--  * The seed declared PL/pgSQL variables window_start / window_end, which are
--    also rate_limits columns; "WHERE ... AND window_start = window_start" and
--    "ON CONFLICT (user_id, resource_type, window_start)" then fail at run time
--    with ERROR: column reference "window_start" is ambiguous.  Locals are
--    renamed v_*, and all column references are qualified with an alias.
--  * The seed ignored p_window_minutes (always a 1-hour window from
--    date_trunc('hour', ...)).  The window is now p_window_minutes long and
--    aligned to the Unix epoch (UTC), so every caller computes the same
--    window_start for the same instant (for 60 that is the top of the UTC
--    hour).  The seed's UNIQUE (user_id, resource_type, window_start) key
--    means callers should use one window length per resource_type.
--  * The seed's read-then-write (SELECT count ... ; INSERT ... ON CONFLICT)
--    was racy: two concurrent sessions could both read count = limit-1 and
--    both be admitted.  It is now ONE statement: the ON CONFLICT DO UPDATE
--    locks the existing row and its WHERE is evaluated against the latest
--    committed row version, so concurrent callers are serialized and the
--    counter never goes past p_limit (it stops at the limit; a FALSE answer
--    does not increment it).  A concurrent first insert is resolved by
--    ON CONFLICT (the loser waits, then takes the UPDATE path).
CREATE OR REPLACE FUNCTION public.check_rate_limit(
    p_user_id UUID,
    p_resource_type VARCHAR(50),
    p_limit INTEGER,
    p_window_minutes INTEGER DEFAULT 60
) RETURNS BOOLEAN AS $$
DECLARE
    v_window_start TIMESTAMP WITH TIME ZONE;
    v_window_end   TIMESTAMP WITH TIME ZONE;
    v_count        INTEGER;
BEGIN
    IF p_window_minutes IS NULL OR p_window_minutes <= 0 THEN
        RAISE EXCEPTION 'check_rate_limit: p_window_minutes must be > 0 (got %)',
            p_window_minutes;
    END IF;

    -- No budget at all: refuse without writing anything.
    IF p_limit IS NULL OR p_limit <= 0 THEN
        RETURN FALSE;
    END IF;

    -- Epoch-aligned window of p_window_minutes (date_bin exists since PG14).
    v_window_start := date_bin(make_interval(mins => p_window_minutes),
                               NOW(),
                               TIMESTAMPTZ '1970-01-01 00:00:00+00');
    v_window_end   := v_window_start + make_interval(mins => p_window_minutes);

    INSERT INTO public.rate_limits AS rl
           (user_id, resource_type, count, window_start, window_end)
    VALUES (p_user_id, p_resource_type, 1, v_window_start, v_window_end)
    ON CONFLICT (user_id, resource_type, window_start)
    DO UPDATE SET count = COALESCE(rl.count, 0) + 1
           WHERE COALESCE(rl.count, 0) < p_limit
    RETURNING rl.count INTO v_count;

    -- No row returned => the conflicting row was already at the limit.
    RETURN v_count IS NOT NULL AND v_count <= p_limit;
END;
$$ LANGUAGE plpgsql;

-- 5.2 Usage analytics aggregation ---------------------------------------------
-- FIXES against the seed:
--  * RETURNS TABLE (date, event_type, count) creates PL/pgSQL OUT variables
--    with those names; the seed's unqualified event_type / ORDER BY date then
--    fail at run time with ERROR: column reference "event_type" is ambiguous.
--    All columns are qualified with the alias "ue", and GROUP BY / ORDER BY
--    use output positions.
--  * Each output column is cast to exactly the declared result type
--    (DATE, VARCHAR(50), BIGINT) so RETURN QUERY can never fail with
--    "structure of query does not match function result type".
--  * DEFAULT CURRENT_DATE - INTERVAL '30 days' is a timestamp expression for a
--    DATE parameter (silently coerced); written as plain date arithmetic
--    (CURRENT_DATE - 30), which is a DATE.
--  * The seed's upper bound "created_at <= p_end_date + INTERVAL '1 day'" also
--    counted events at exactly midnight of the following day.  Now half-open:
--    created_at < p_end_date + 1.  Day boundaries follow the session TimeZone,
--    consistent with the created_at::date grouping.
CREATE OR REPLACE FUNCTION public.get_usage_analytics(
    p_user_id UUID,
    p_start_date DATE DEFAULT (CURRENT_DATE - 30),
    p_end_date DATE DEFAULT CURRENT_DATE
) RETURNS TABLE (
    date DATE,
    event_type VARCHAR(50),
    count BIGINT
) AS $$
BEGIN
    RETURN QUERY
    SELECT
        (ue.created_at)::DATE            AS usage_date,
        (ue.event_type)::VARCHAR(50)     AS usage_event_type,
        (COUNT(*))::BIGINT               AS usage_count
    FROM public.usage_events AS ue
    WHERE ue.user_id = p_user_id
      AND ue.created_at >= p_start_date
      AND ue.created_at <  (p_end_date + 1)
    GROUP BY 1, 2
    ORDER BY 1 DESC, 2;
END;
$$ LANGUAGE plpgsql STABLE;
