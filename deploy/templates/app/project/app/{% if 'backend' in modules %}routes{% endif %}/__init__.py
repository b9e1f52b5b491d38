"""One router per resource; app/api.py includes them."""
