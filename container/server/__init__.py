"""SageMaker hosting for the classifier artifact: `serve` runs gunicorn with app.py."""
