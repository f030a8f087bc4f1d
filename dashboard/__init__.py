"""The study dashboard (read-only queries → pure figure builders → Dash app). Empty until the dashboard issue lands;
the package exists so the distribution's layout is final."""
