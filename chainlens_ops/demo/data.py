"""Small, realistic sample data for the demo sandbox (a few thousand rows)."""

from __future__ import annotations

SUPABASE_SQL = """
INSERT INTO auth.users (id, email)
SELECT md5('user' || g)::uuid, 'user' || g || '@example.com' FROM generate_series(1, 200) g;
INSERT INTO public.user_profiles (id, email, full_name, tier)
SELECT md5('user' || g)::uuid, 'user' || g || '@example.com', 'User ' || g,
       (ARRAY['free', 'pro', 'enterprise'])[1 + g % 3]
FROM generate_series(1, 200) g;
INSERT INTO public.subscriptions (user_id, tier, status, current_period_start,
                                  current_period_end)
SELECT md5('user' || g)::uuid, (ARRAY['pro', 'enterprise'])[1 + g % 2],
       (ARRAY['active', 'active', 'active', 'canceled', 'past_due'])[1 + g % 5],
       now() - interval '20 days', now() + interval '10 days'
FROM generate_series(1, 200) g WHERE g % 3 <> 0;
INSERT INTO public.usage_events (user_id, event_type, resource_type, resource_id, created_at)
SELECT md5('user' || (1 + g % 200))::uuid,
       (ARRAY['analysis.run', 'api.call', 'report.view'])[1 + g % 3], 'project',
       'project-' || (g % 40), now() - (g % 150) * interval '1 day'
FROM generate_series(1, 6000) g;
"""

MICROSERVICES_SQL = """
INSERT INTO onchain_analysis.price_history (project_id, price, market_cap, volume_24h,
                                            "timestamp")
SELECT 'project-' || (g % 40), 1 + (g % 97) / 7.0, 1000000 + g, 50000 + g,
       now() - (g % 150) * interval '1 day'
FROM generate_series(1, 6000) g;
INSERT INTO onchain_analysis.project_analyses (project_id, chain_id, risk_score, confidence)
SELECT 'project-' || g, 1, g % 100, 0.9 FROM generate_series(1, 40) g;
INSERT INTO shared_cache.analysis_cache (cache_key, project_id, analysis_type, cached_data,
                                         ttl_seconds, expires_at)
SELECT 'onchain:project-' || g, 'project-' || (g % 40), 'onchain', '{"score": 1}', 3600,
       CASE WHEN g % 4 = 0 THEN now() - interval '1 hour' ELSE now() + interval '1 hour' END
FROM generate_series(1, 400) g;
"""

# The simulated incident: a forgotten WHERE clause and a wrong DELETE.
INCIDENT_SQL = """
UPDATE public.user_profiles SET tier = 'free';
DELETE FROM public.subscriptions WHERE status = 'active';
"""

# What the side-by-side comparison shows, per server.
PROBE_SQL = {
    "users on 'free' tier": "SELECT count(*) FROM public.user_profiles WHERE tier = 'free'",
    "users on paid tiers": "SELECT count(*) FROM public.user_profiles WHERE tier <> 'free'",
    "active subscriptions": "SELECT count(*) FROM public.subscriptions WHERE status = 'active'",
    "usage events": "SELECT count(*) FROM public.usage_events",
}
