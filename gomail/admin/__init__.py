"""The admin side: admin accounts and roles (L{store}); the admin API and dashboard build on them."""
