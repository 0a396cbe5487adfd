"""The app's pages (Streamlit scripts run by `st.navigation`; see `dashboard.ui.PAGES`)."""
