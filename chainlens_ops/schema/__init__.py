"""The platform's schema: versioned SQL files applied once each, safely."""
