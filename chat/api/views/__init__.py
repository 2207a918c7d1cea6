"""API views: thin — parse with an InputSerializer, call selectors/services, answer with an
OutputSerializer. One class per resource path, one method per operation."""
