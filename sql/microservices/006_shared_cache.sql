-- =============================================================================
-- microservices / 006_shared_cache.sql
-- Target DB : "microservices"
-- Derives from: seed 000_f63daeb8f570bd54 section 4.1 (analysis_cache,
--               cleanup_expired_cache(), hourly cleanup schedule).
-- =============================================================================

CREATE TABLE shared_cache.analysis_cache (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    cache_key VARCHAR(255) NOT NULL UNIQUE,
    project_id VARCHAR(100) NOT NULL,
    analysis_type VARCHAR(50) NOT NULL,

    -- Cached Data
    cached_data JSONB NOT NULL,

    -- Cache Metadata
    confidence DECIMAL(3,2),
    ttl_seconds INTEGER NOT NULL,
    hit_count INTEGER DEFAULT 0,

    expires_at TIMESTAMP WITH TIME ZONE NOT NULL,
    created_at TIMESTAMP WITH TIME ZONE DEFAULT NOW(),
    last_accessed_at TIMESTAMP WITH TIME ZONE DEFAULT NOW()
);

-- Note: idx_cache_key duplicates the unique index behind UNIQUE (cache_key);
-- kept because the seed names it.
CREATE INDEX idx_cache_key ON shared_cache.analysis_cache(cache_key);
CREATE INDEX idx_cache_project_id ON shared_cache.analysis_cache(project_id);
CREATE INDEX idx_cache_expires_at ON shared_cache.analysis_cache(expires_at);
CREATE INDEX idx_cache_analysis_type ON shared_cache.analysis_cache(analysis_type);

-- Auto-cleanup expired cache entries
CREATE OR REPLACE FUNCTION shared_cache.cleanup_expired_cache()
RETURNS void AS $$
BEGIN
    DELETE FROM shared_cache.analysis_cache
    WHERE expires_at < NOW();
END;
$$ LANGUAGE plpgsql;

-- Schedule cleanup every hour.
-- FIX: the seed calls cron.schedule(...) unconditionally.  cron.schedule
-- comes from the pg_cron extension, which vanilla PostgreSQL does not have
-- (ERROR: schema "cron" does not exist) and which can only be installed in
-- the one database named by cron.database_name.  The call is therefore made
-- only where pg_cron is installed in this database.  Elsewhere the
-- chainlens-ops daemon is responsible for running
--   SELECT shared_cache.cleanup_expired_cache();
-- every hour.  (pg_cron >= 1.3 upserts a job by name, so re-running is safe.)
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_cron') THEN
        EXECUTE $cmd$
            SELECT cron.schedule('cleanup-cache', '0 * * * *',
                                 'SELECT shared_cache.cleanup_expired_cache();')
        $cmd$;
    END IF;
END
$$;
