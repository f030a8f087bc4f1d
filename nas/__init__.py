"""The platform: studies → trials → study database (see ARCHITECTURE.md). This package grows with the platform issue;
today it holds the CLI's preset demo and the first building blocks (data, trial, measure, stats)."""
