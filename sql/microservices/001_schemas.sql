-- =============================================================================
-- microservices / 001_schemas.sql
-- Target DB : "microservices" (chainlens_microservices)
-- Derives from: seed 000_f63daeb8f570bd54 sections 3.1-3.4 and 4.1 (the
--               CREATE SCHEMA statements, gathered here so later files can
--               be applied in any schema order).
--
-- Extensions: none are required. gen_random_uuid() is built into core
-- PostgreSQL since 13 (no pgcrypto / uuid-ossp).
-- =============================================================================

CREATE SCHEMA IF NOT EXISTS onchain_analysis;
CREATE SCHEMA IF NOT EXISTS sentiment_analysis;
CREATE SCHEMA IF NOT EXISTS tokenomics_analysis;
CREATE SCHEMA IF NOT EXISTS team_verification;
CREATE SCHEMA IF NOT EXISTS shared_cache;
