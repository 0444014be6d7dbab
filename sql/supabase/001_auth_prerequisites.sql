-- =============================================================================
-- supabase / 001_auth_prerequisites.sql
-- Target DB : "supabase" (shared Supabase PostgreSQL, public schema)
-- Derives from: seed 000_f63daeb8f570bd54 section 2.1 (prerequisite of
--               public.user_profiles, which references auth.users(id)).
--
-- Extensions: none are required. gen_random_uuid() is built into core
-- PostgreSQL since 13, so the seed's UUID defaults need no pgcrypto/uuid-ossp.
-- =============================================================================

-- FIX (seed 2.1): public.user_profiles.id REFERENCES auth.users(id), but the
-- auth schema and auth.users table exist only on a real Supabase project.
-- Vanilla PostgreSQL 15 rejects the seed with
--   ERROR: schema "auth" does not exist
-- So create a minimal stand-in auth.users ONLY when it is absent.  On real
-- Supabase auth.users already exists (owned by supabase_auth_admin) and this
-- block does nothing -- not even CREATE SCHEMA, whose privilege check would
-- run before its IF NOT EXISTS test.
DO $$
BEGIN
    IF to_regclass('auth.users') IS NULL THEN
        CREATE SCHEMA IF NOT EXISTS auth;

        -- Minimal shape: only "id" is relied upon by this project.
        -- Everything else is nullable so nothing else has to be supplied.
        CREATE TABLE auth.users (
            id         UUID PRIMARY KEY,
            email      TEXT,
            created_at TIMESTAMP WITH TIME ZONE DEFAULT NOW()
        );

        COMMENT ON TABLE auth.users IS
            'Stand-in for Supabase Auth''s auth.users on vanilla PostgreSQL '
            '(created by chainlens-ops migration supabase/001).';
    END IF;
END
$$;
