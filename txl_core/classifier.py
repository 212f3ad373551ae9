"""placeholder until the classifier lands"""
class TXLDocumentClassifier: pass
