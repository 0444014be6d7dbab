-- =============================================================================
-- microservices / 007_functions_triggers.sql
-- Target DB : "microservices"
-- Derives from: seed 000_f63daeb8f570bd54 section 5.1 (update_updated_at_column
--               + "apply to all tables with updated_at").
-- =============================================================================

-- FIX: the seed defines update_updated_at_column() only once, in the
-- Supabase context, and attaches it only to public.user_profiles.  This is a
-- separate database, so the function must be created here too (as
-- public.update_updated_at_column, schema-qualified so search_path does not
-- matter), and every table here that has updated_at gets its trigger;
-- otherwise updated_at would stay at its insert-time DEFAULT forever.
CREATE OR REPLACE FUNCTION public.update_updated_at_column()
RETURNS TRIGGER AS $$
BEGIN
    NEW.updated_at = NOW();
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER update_project_analyses_updated_at
    BEFORE UPDATE ON onchain_analysis.project_analyses
    FOR EACH ROW EXECUTE FUNCTION public.update_updated_at_column();

CREATE TRIGGER update_sentiment_analyses_updated_at
    BEFORE UPDATE ON sentiment_analysis.sentiment_analyses
    FOR EACH ROW EXECUTE FUNCTION public.update_updated_at_column();

CREATE TRIGGER update_tokenomics_analyses_updated_at
    BEFORE UPDATE ON tokenomics_analysis.tokenomics_analyses
    FOR EACH ROW EXECUTE FUNCTION public.update_updated_at_column();

CREATE TRIGGER update_team_analyses_updated_at
    BEFORE UPDATE ON team_verification.team_analyses
    FOR EACH ROW EXECUTE FUNCTION public.update_updated_at_column();

CREATE TRIGGER update_team_members_updated_at
    BEFORE UPDATE ON team_verification.team_members
    FOR EACH ROW EXECUTE FUNCTION public.update_updated_at_column();
