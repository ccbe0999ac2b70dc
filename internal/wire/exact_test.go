package wire

import "testing"

func TestUnmarshalExact(t *testing.T) {
	type answer struct {
		AccessToken string `json:"access_token"`
		Plain       string
		Skipped     string `json:"-"`
	}
	for _, tc := range []struct {
		body string
		want answer
		bad  bool
	}{
		{body: `{"access_token":"a","Plain":"p"}`, want: answer{AccessToken: "a", Plain: "p"}},
		{body: `{"ACCESS_TOKEN":"a","plain":"p","Access_Token":"b"}`},
		{body: `{"access_token":"a","ACCESS_TOKEN":"b"}`, want: answer{AccessToken: "a"}},
		{body: `{"\u0061ccess_token":"a"}`, want: answer{AccessToken: "a"}}, // an escape is the same name
		{body: `{"Skipped":"s","-":"s"}`},
		{body: `null`, bad: true},
		{body: `[]`, bad: true},
		{body: `{"access_token":1}`, bad: true},
	} {
		var got answer
		err := UnmarshalExact([]byte(tc.body), &got)
		if (err != nil) != tc.bad || got != tc.want {
			t.Errorf("UnmarshalExact(%s) = %+v, %v; want %+v, error %v", tc.body, got, err, tc.want, tc.bad)
		}
	}
}
