-- =============================================================================
-- microservices / 005_team_verification.sql
-- Target DB : "microservices"
-- Derives from: seed 000_f63daeb8f570bd54 section 3.4 (team_analyses,
--               team_members).  Seed SQL is valid as written.
-- =============================================================================

-- 3.4 team_analyses table -----------------------------------------------------
CREATE TABLE team_verification.team_analyses (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    project_id VARCHAR(100) NOT NULL,
    project_website VARCHAR(255),
    github_org VARCHAR(100),

    -- Team Overview
    team_size INTEGER DEFAULT 0,
    credibility_score INTEGER NOT NULL,
    verification_level VARCHAR(20) NOT NULL, -- low, medium, high

    -- Development Metrics
    development_data JSONB NOT NULL DEFAULT '{}',
    -- {
    --   "githubActivity": 95,
    --   "commits30d": 234,
    --   "contributors": 67,
    --   "codeQuality": 88
    -- }

    -- Risk Assessment
    risk_flags JSONB DEFAULT '[]',
    background_data JSONB DEFAULT '{}',

    confidence DECIMAL(3,2) NOT NULL,
    correlation_id VARCHAR(50),
    processing_time INTEGER,

    created_at TIMESTAMP WITH TIME ZONE DEFAULT NOW(),
    updated_at TIMESTAMP WITH TIME ZONE DEFAULT NOW()
);

CREATE INDEX idx_team_project_id ON team_verification.team_analyses(project_id);
CREATE INDEX idx_team_credibility_score ON team_verification.team_analyses(credibility_score);
CREATE INDEX idx_team_verification_level ON team_verification.team_analyses(verification_level);
CREATE INDEX idx_team_created_at ON team_verification.team_analyses(created_at);

-- 3.4 team_members table ------------------------------------------------------
CREATE TABLE team_verification.team_members (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    analysis_id UUID NOT NULL REFERENCES team_verification.team_analyses(id) ON DELETE CASCADE,

    name VARCHAR(255) NOT NULL,
    role VARCHAR(100),

    -- Social Profiles
    linkedin_profile VARCHAR(255),
    github_profile VARCHAR(255),
    twitter_profile VARCHAR(255),

    -- Verification Data
    verification_data JSONB NOT NULL DEFAULT '{}',
    -- {
    --   "linkedin": {"verified": true, "credibilityScore": 92},
    --   "github": {"verified": true, "credibilityScore": 95},
    --   "twitter": {"verified": true, "credibilityScore": 88}
    -- }

    overall_score INTEGER NOT NULL,
    risk_flags JSONB DEFAULT '[]',

    created_at TIMESTAMP WITH TIME ZONE DEFAULT NOW(),
    updated_at TIMESTAMP WITH TIME ZONE DEFAULT NOW()
);

CREATE INDEX idx_team_members_analysis_id ON team_verification.team_members(analysis_id);
CREATE INDEX idx_team_members_name ON team_verification.team_members(name);
CREATE INDEX idx_team_members_overall_score ON team_verification.team_members(overall_score);
