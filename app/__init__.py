"""infosft's front door: the `infosft` command line, the Streamlit app and its background
jobs."""
