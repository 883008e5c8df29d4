"""Framework integrations (DESIGN §11): each module imports its framework, an optional extra;
the core never imports them."""
