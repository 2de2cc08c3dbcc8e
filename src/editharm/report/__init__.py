"""Reports: runs read back from MLflow (`collect`), drawn (`figures`), tabulated (`document`), logged (`build`)."""
