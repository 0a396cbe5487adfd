"""moesim's Streamlit app; ``moesim dashboard`` serves it on 127.0.0.1.

Five pages (`dashboard.ui.PAGES`), each a thin script under ``dashboard/views/``
over the cached functions of ``dashboard/logic/``:

    streamlit run dashboard/app.py     # what `moesim dashboard` runs
"""

from __future__ import annotations

import streamlit as st

from moesim.dashboard.ui import PAGES

st.set_page_config(page_title="moesim", page_icon=":material/memory:", layout="wide")
pages = [
    st.Page(script, title=title, icon=icon, url_path=url, default=i == 0)
    for i, (script, title, icon, url) in enumerate(PAGES)
]
st.navigation(pages).run()
