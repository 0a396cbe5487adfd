"""The app's page logic: cached functions over the packages' public API, and the plotly figures they draw.

One module per page (``cap``, ``scenario``, ``sweeps``, ``placement``,
``profiles``); ``charts`` holds the figures pages share. Nothing here needs a
running Streamlit server: `st.cache_data` falls back to an in-memory cache,
so tests and benchmarks call these functions directly.
"""
