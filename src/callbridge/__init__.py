"""callbridge: an Exotel CCM v3-compatible contact-center calling server."""
