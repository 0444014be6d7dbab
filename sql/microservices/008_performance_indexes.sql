-- =============================================================================
-- microservices / 008_performance_indexes.sql
-- Target DB : "microservices"
-- Derives from: seed 000_f63daeb8f570bd54 section 6.1 -- only the indexes on
--               microservices tables (idx_usage_events_user_type_date and
--               idx_subscriptions_active live in supabase/005).
--
-- Plain CREATE INDEX (not CONCURRENTLY): the migration runner wraps every file
-- in one transaction, where CONCURRENTLY is not allowed.
-- =============================================================================

-- Composite index for common queries
CREATE INDEX idx_project_analyses_project_created
ON onchain_analysis.project_analyses(project_id, created_at DESC);

-- Expression index for JSON queries.
-- FIX: the seed wrote ON ...((price_data->>'current')::numeric), which is a
-- syntax error (ERROR: syntax error at or near "::"): an index expression that
-- is not a bare function call must be wrapped in its own parentheses, so the
-- cast needs one more pair.
-- Caveat (seed semantics, unchanged): because the expression is evaluated on
-- every INSERT/UPDATE, a row whose price_data->>'current' is not a valid
-- numeric (e.g. "N/A") is rejected with "invalid input syntax for type
-- numeric".  JSON null / missing key index as NULL and are fine.
CREATE INDEX idx_price_data_current
ON onchain_analysis.project_analyses(((price_data->>'current')::numeric));
