-- =============================================================================
-- supabase / 005_performance_indexes.sql
-- Target DB : "supabase" (public schema)
-- Derives from: seed 000_f63daeb8f570bd54 section 6.1 -- only the indexes on
--               supabase tables (idx_project_analyses_project_created and
--               idx_price_data_current live in microservices/008).
--
-- Plain CREATE INDEX (not CONCURRENTLY): the migration runner wraps every file
-- in one transaction, and CREATE INDEX CONCURRENTLY cannot run inside one --
-- nor on a partitioned table such as usage_events.
-- =============================================================================

-- Composite index for common queries.  usage_events is partitioned: this is a
-- partitioned index, cascaded to every partition (including future ones).
CREATE INDEX idx_usage_events_user_type_date
ON public.usage_events(user_id, event_type, created_at);

-- Partial index for active records.
CREATE INDEX idx_subscriptions_active
ON public.subscriptions(user_id)
WHERE status = 'active';
