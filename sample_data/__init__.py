"""The bundled sample data, installed as ``infosft.sample_data``; read it through
``infosft.bundled``, not by path."""
