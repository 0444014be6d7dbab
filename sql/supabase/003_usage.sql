-- =============================================================================
-- supabase / 003_usage.sql
-- Target DB : "supabase" (public schema)
-- Derives from: seed 000_f63daeb8f570bd54 section 2.3 (usage_events with its
--               January 2025 partition, rate_limits).
-- =============================================================================

-- 2.3 usage_events table ------------------------------------------------------
-- FIX: the seed creates usage_events as a plain table and then does
--   CREATE TABLE ... PARTITION OF public.usage_events
-- which PostgreSQL rejects: ERROR: "usage_events" is not partitioned.
-- The table is therefore declared PARTITION BY RANGE (created_at).
--
-- FIX: on a partitioned table every PRIMARY KEY / UNIQUE constraint must
-- include all partition key columns, otherwise PostgreSQL rejects it:
--   ERROR: unique constraint on partitioned table must include all
--          partitioning columns
-- So the seed's "id UUID PRIMARY KEY" becomes PRIMARY KEY (id, created_at).
-- This makes created_at NOT NULL (a PK column); its DEFAULT NOW() is kept, so
-- inserts that omit it behave as before (only an explicit NULL is refused).
CREATE TABLE public.usage_events (
    id UUID DEFAULT gen_random_uuid(),
    user_id UUID NOT NULL REFERENCES public.user_profiles(id),
    event_type VARCHAR(50) NOT NULL,
    resource_type VARCHAR(50),
    resource_id VARCHAR(255),
    metadata JSONB DEFAULT '{}',
    ip_address INET,
    user_agent TEXT,
    created_at TIMESTAMP WITH TIME ZONE DEFAULT NOW(),
    PRIMARY KEY (id, created_at)
) PARTITION BY RANGE (created_at);

-- FIX: without a DEFAULT partition an insert whose created_at falls outside
-- every monthly partition fails (ERROR: no partition of relation
-- "usage_events" found for row).  The seed only defines Jan/Feb 2025, so
-- every "now" insert would fail.  The DEFAULT partition catches everything.
CREATE TABLE public.usage_events_default PARTITION OF public.usage_events DEFAULT;

-- Partitioning by month for performance.
-- FIX: the seed's bounds ('2025-01-01') are read in the session's TimeZone,
-- so the month boundaries would depend on who runs the migration.  They are
-- written explicitly in UTC.
CREATE TABLE public.usage_events_y2025m01 PARTITION OF public.usage_events
FOR VALUES FROM ('2025-01-01 00:00+00') TO ('2025-02-01 00:00+00');

-- Indexes (partitioned indexes: created on the parent, cascaded to every
-- existing and future partition).
CREATE INDEX idx_usage_events_user_id ON public.usage_events(user_id);
CREATE INDEX idx_usage_events_type ON public.usage_events(event_type);
CREATE INDEX idx_usage_events_created_at ON public.usage_events(created_at);

-- 2.3 rate_limits table -------------------------------------------------------
CREATE TABLE public.rate_limits (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id UUID NOT NULL REFERENCES public.user_profiles(id),
    resource_type VARCHAR(50) NOT NULL,
    count INTEGER DEFAULT 0,
    window_start TIMESTAMP WITH TIME ZONE NOT NULL,
    window_end TIMESTAMP WITH TIME ZONE NOT NULL,
    created_at TIMESTAMP WITH TIME ZONE DEFAULT NOW(),

    UNIQUE(user_id, resource_type, window_start)
);

CREATE INDEX idx_rate_limits_user_resource ON public.rate_limits(user_id, resource_type);
CREATE INDEX idx_rate_limits_window ON public.rate_limits(window_start, window_end);
