# Extension config generation and CPack are not exercised by the stub.
