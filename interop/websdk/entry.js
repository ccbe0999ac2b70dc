// The official SDK, unchanged: the page only hands its client class to the
// test's script.
import { PrldSessionClient } from "@prelude.so/js-sdk/session";

window.PrldSessionClient = PrldSessionClient;
