-- =============================================================================
-- microservices / 002_onchain_analysis.sql
-- Target DB : "microservices"
-- Derives from: seed 000_f63daeb8f570bd54 section 3.1 (project_analyses,
--               price_history with its January 2025 partition).
-- =============================================================================

-- 3.1 project_analyses table --------------------------------------------------
CREATE TABLE onchain_analysis.project_analyses (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    project_id VARCHAR(100) NOT NULL,
    token_address VARCHAR(42),
    chain_id INTEGER,

    -- Price Data
    price_data JSONB NOT NULL DEFAULT '{}',
    -- {
    --   "current": 12.45,
    --   "change24h": 2.3,
    --   "change7d": -1.2,
    --   "marketCap": 12500000000,
    --   "volume24h": 125000000,
    --   "volatility": 0.45
    -- }

    -- Liquidity Data
    liquidity_data JSONB NOT NULL DEFAULT '{}',
    -- {
    --   "totalLiquidity": 850000000,
    --   "liquidityScore": 85,
    --   "topPools": [...],
    --   "slippageEstimate": {...}
    -- }

    -- Holder Data
    holder_data JSONB NOT NULL DEFAULT '{}',
    -- {
    --   "totalHolders": 285000,
    --   "top10Concentration": 0.15,
    --   "distributionScore": 78,
    --   "whaleActivity": "low"
    -- }

    -- Transaction Data
    transaction_data JSONB NOT NULL DEFAULT '{}',

    -- Calculated Metrics
    risk_score DECIMAL(5,2) NOT NULL,
    confidence DECIMAL(3,2) NOT NULL,

    -- Metadata
    data_sources JSONB DEFAULT '[]',
    processing_time INTEGER, -- milliseconds
    correlation_id VARCHAR(50),

    created_at TIMESTAMP WITH TIME ZONE DEFAULT NOW(),
    updated_at TIMESTAMP WITH TIME ZONE DEFAULT NOW()
);

CREATE INDEX idx_onchain_project_id ON onchain_analysis.project_analyses(project_id);
CREATE INDEX idx_onchain_token_address ON onchain_analysis.project_analyses(token_address);
CREATE INDEX idx_onchain_created_at ON onchain_analysis.project_analyses(created_at);
CREATE INDEX idx_onchain_risk_score ON onchain_analysis.project_analyses(risk_score);

-- GIN index for JSONB queries
CREATE INDEX idx_onchain_price_data_gin ON onchain_analysis.project_analyses USING GIN(price_data);

-- 3.1 price_history table -----------------------------------------------------
-- FIX: the seed creates price_history as a plain table and then does
--   CREATE TABLE ... PARTITION OF onchain_analysis.price_history
-- which PostgreSQL rejects: ERROR: "price_history" is not partitioned.
-- The table is therefore declared PARTITION BY RANGE ("timestamp").
--
-- FIX: on a partitioned table the PRIMARY KEY must include the partition key
-- (ERROR: unique constraint on partitioned table must include all
-- partitioning columns), so "id UUID PRIMARY KEY" becomes
-- PRIMARY KEY (id, "timestamp").  "timestamp" was already NOT NULL.
-- ("timestamp" is quoted only for readability: it is the seed's column name.)
CREATE TABLE onchain_analysis.price_history (
    id UUID DEFAULT gen_random_uuid(),
    project_id VARCHAR(100) NOT NULL,
    token_address VARCHAR(42),
    chain_id INTEGER,

    price DECIMAL(20,8) NOT NULL,
    market_cap BIGINT,
    volume_24h BIGINT,
    "timestamp" TIMESTAMP WITH TIME ZONE NOT NULL,

    created_at TIMESTAMP WITH TIME ZONE DEFAULT NOW(),
    PRIMARY KEY (id, "timestamp")
) PARTITION BY RANGE ("timestamp");

-- FIX: DEFAULT partition so a row of any date is accepted (otherwise:
-- ERROR: no partition of relation "price_history" found for row).
CREATE TABLE onchain_analysis.price_history_default
    PARTITION OF onchain_analysis.price_history DEFAULT;

-- Partitioning by month.
-- FIX: bounds written in UTC; the seed's bare dates would be read in the
-- session's TimeZone.
CREATE TABLE onchain_analysis.price_history_y2025m01 PARTITION OF onchain_analysis.price_history
FOR VALUES FROM ('2025-01-01 00:00+00') TO ('2025-02-01 00:00+00');

-- Indexes (partitioned indexes, cascaded to all partitions)
CREATE INDEX idx_price_history_project_timestamp ON onchain_analysis.price_history(project_id, "timestamp");
CREATE INDEX idx_price_history_token_timestamp ON onchain_analysis.price_history(token_address, "timestamp");
