"""HTTP faces of the access room: the token service and the management API."""
