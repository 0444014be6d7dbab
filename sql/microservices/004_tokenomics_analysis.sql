-- =============================================================================
-- microservices / 004_tokenomics_analysis.sql
-- Target DB : "microservices"
-- Derives from: seed 000_f63daeb8f570bd54 section 3.3 (tokenomics_analyses).
--               Seed SQL is valid as written.
-- =============================================================================

CREATE TABLE tokenomics_analysis.tokenomics_analyses (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    project_id VARCHAR(100) NOT NULL,
    token_address VARCHAR(42),
    protocol_name VARCHAR(100),

    -- Supply Metrics
    supply_data JSONB NOT NULL DEFAULT '{}',
    -- {
    --   "total": 1000000000,
    --   "circulating": 753000000,
    --   "inflation": 2.5,
    --   "vestingSchedule": {...}
    -- }

    -- Distribution Data
    distribution_data JSONB NOT NULL DEFAULT '{}',
    -- {
    --   "team": 0.2,
    --   "investors": 0.18,
    --   "community": 0.62,
    --   "fairnessScore": 82
    -- }

    -- DeFi Integration
    defi_data JSONB NOT NULL DEFAULT '{}',
    -- {
    --   "stakingAPY": 8.5,
    --   "yieldOpportunities": [...],
    --   "totalStaked": 125000000
    -- }

    -- Utility Analysis
    utility_data JSONB NOT NULL DEFAULT '{}',

    -- Calculated Scores
    tokenomics_score INTEGER NOT NULL,
    fairness_score INTEGER NOT NULL,
    utility_score INTEGER NOT NULL,
    confidence DECIMAL(3,2) NOT NULL,

    correlation_id VARCHAR(50),
    processing_time INTEGER,

    created_at TIMESTAMP WITH TIME ZONE DEFAULT NOW(),
    updated_at TIMESTAMP WITH TIME ZONE DEFAULT NOW()
);

CREATE INDEX idx_tokenomics_project_id ON tokenomics_analysis.tokenomics_analyses(project_id);
CREATE INDEX idx_tokenomics_token_address ON tokenomics_analysis.tokenomics_analyses(token_address);
CREATE INDEX idx_tokenomics_score ON tokenomics_analysis.tokenomics_analyses(tokenomics_score);
CREATE INDEX idx_tokenomics_created_at ON tokenomics_analysis.tokenomics_analyses(created_at);
