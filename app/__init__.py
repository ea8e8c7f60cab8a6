"""infosft's front door: the `infosft` command line and (later) the Streamlit app."""
