"""`lmi chat`: a Streamlit chatbot over a streaming endpoint (the page in app.py; the rest is plain Python)."""
