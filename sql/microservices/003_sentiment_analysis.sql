-- =============================================================================
-- microservices / 003_sentiment_analysis.sql
-- Target DB : "microservices"
-- Derives from: seed 000_f63daeb8f570bd54 section 3.2 (sentiment_analyses,
--               social_mentions).  Seed SQL is valid as written.
-- =============================================================================

-- 3.2 sentiment_analyses table ------------------------------------------------
CREATE TABLE sentiment_analysis.sentiment_analyses (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    project_id VARCHAR(100) NOT NULL,
    keywords JSONB NOT NULL DEFAULT '[]',
    timeframe VARCHAR(10) NOT NULL DEFAULT '24h',

    -- Overall Sentiment
    overall_sentiment DECIMAL(3,2) NOT NULL, -- -1 to 1
    sentiment_trend VARCHAR(20), -- positive, negative, neutral

    -- Source Data
    twitter_data JSONB DEFAULT '{}',
    reddit_data JSONB DEFAULT '{}',
    news_data JSONB DEFAULT '{}',

    -- Aggregated Metrics
    total_mentions INTEGER DEFAULT 0,
    engagement_score INTEGER DEFAULT 0,
    influencer_mentions INTEGER DEFAULT 0,

    -- Analysis Metadata
    confidence DECIMAL(3,2) NOT NULL,
    data_quality_score INTEGER DEFAULT 0,
    bot_detection_score DECIMAL(3,2) DEFAULT 0,

    correlation_id VARCHAR(50),
    processing_time INTEGER,

    created_at TIMESTAMP WITH TIME ZONE DEFAULT NOW(),
    updated_at TIMESTAMP WITH TIME ZONE DEFAULT NOW()
);

CREATE INDEX idx_sentiment_project_id ON sentiment_analysis.sentiment_analyses(project_id);
CREATE INDEX idx_sentiment_created_at ON sentiment_analysis.sentiment_analyses(created_at);
CREATE INDEX idx_sentiment_overall_score ON sentiment_analysis.sentiment_analyses(overall_sentiment);
CREATE INDEX idx_sentiment_keywords_gin ON sentiment_analysis.sentiment_analyses USING GIN(keywords);

-- 3.2 social_mentions table ---------------------------------------------------
CREATE TABLE sentiment_analysis.social_mentions (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    analysis_id UUID NOT NULL REFERENCES sentiment_analysis.sentiment_analyses(id) ON DELETE CASCADE,

    source VARCHAR(20) NOT NULL, -- twitter, reddit, news
    platform_id VARCHAR(255), -- tweet_id, post_id, article_id
    author VARCHAR(255),
    content TEXT,
    sentiment_score DECIMAL(3,2),
    engagement_metrics JSONB DEFAULT '{}',

    published_at TIMESTAMP WITH TIME ZONE,
    created_at TIMESTAMP WITH TIME ZONE DEFAULT NOW()
);

CREATE INDEX idx_social_mentions_analysis_id ON sentiment_analysis.social_mentions(analysis_id);
CREATE INDEX idx_social_mentions_source ON sentiment_analysis.social_mentions(source);
CREATE INDEX idx_social_mentions_published_at ON sentiment_analysis.social_mentions(published_at);
